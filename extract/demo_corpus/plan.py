"""The demo corpus without media: balanced labels, splits, languages, what each modality shows, transcripts."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")  # MELD's order

# Each modality's groups of look-alike emotions (the table in extract/demo_corpus/__init__.py).
GROUPS = {
    "audio": (("neutral", "sadness", "disgust"), ("surprise", "joy"), ("fear", "anger")),
    "visual": (("neutral", "joy"), ("surprise", "fear"), ("sadness", "disgust", "anger")),
    "text": (("neutral", "surprise", "joy"), ("fear", "sadness"), ("disgust", "anger")),
}

# Sentiment of the true emotion: uniform in this interval, rounded to one decimal.
SENTIMENT = {"neutral": (-0.2, 0.2), "surprise": (0.0, 0.6), "fear": (-0.8, -0.3), "sadness": (-0.9, -0.4),
             "joy": (0.4, 1.0), "disgust": (-0.8, -0.3), "anger": (-1.0, -0.5)}


@dataclass(frozen=True)
class DemoConfig:
    n_clips: int = 350  # 50 per emotion: enough for the fusion to learn, small enough to extract in a minute
    seed: int = 0  # same seed, same corpus: labels, transcripts, frames and samples
    size: int = 96  # frame side in pixels; the visual encoder resizes anyway
    fps: int = 10
    sample_rate: int = 16000
    min_seconds: float = 2.0
    max_seconds: float = 3.0
    # Fractions of the clips in dev and test (whole blocks of 7, one clip per emotion each). The test split is the
    # large one: at 350 clips its 105 make one clip worth 1 point of accuracy, not 2.4 as 42 did.
    dev: float = 0.1
    test: float = 0.3


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip but its pixels and samples."""

    index: int  # position in the corpus; with the seed it seeds the clip's rendering
    id: str
    split: str
    language: str  # "en" | "zh"
    emotion: str  # the label
    sentiment: float
    shows: dict  # modality -> the emotion it renders (the label or a look-alike from its group); for text
    # also the name of a group-level text ("plain", "worried", "hostile") that fits every emotion of the group
    text: str
    frames: int  # clip length in video frames


def group_of(modality: str, emotion: str) -> tuple[str, ...]:
    return next(group for group in GROUPS[modality] if emotion in group)


# ---------------------------------------------------------------- plan: labels, splits, transcripts

_WHO = {"en": ("my sister", "Ross", "the new manager", "our neighbour", "Monica", "my father"),
        "zh": ("我姐姐", "小王", "新来的经理", "邻居", "老李", "我爸爸")}
_WHAT = {"en": ("the exam results", "the wedding", "the phone call", "the parcel", "the meeting", "the old car"),
         "zh": ("考试成绩", "婚礼", "那个电话", "快递", "会议", "那辆旧车")}
_TEMPLATES = {"en": {
    "neutral": ("{who} said {what} is on Tuesday.", "I put {what} on the table.",
                "Okay, {who} will call about {what} later.", "We talked about {what} for a while."),
    "surprise": ("Wait, {who} really did that?", "No way! {what} is already here?",
                 "I never expected {who} to show up!", "Really? {what}, just like that?"),
    "joy": ("This is wonderful, {who} loved {what}!", "Yes! {what} went perfectly!",
            "I'm so happy about {what}!", "{who} made my day, I love it!"),
    "fear": ("I'm scared something is wrong with {what}.", "Please, don't let {who} find out.",
             "What if {what} goes badly? I'm terrified.", "I heard a noise, {who}, is someone there?"),
    "sadness": ("I miss {who} so much.", "{what} was cancelled, I feel so empty.",
                "Nobody remembered, {who} didn't even call.", "It's over, I lost {what}."),
    "disgust": ("Ugh, {what} smells awful.", "That's gross, {who}, get it away from me.",
                "I can't stand how {who} eats.", "Yuck, {what} is covered in slime."),
    "anger": ("How dare {who} touch {what}!", "I'm furious, {who} lied to me again!",
              "Stop it! You ruined {what}!", "{who} never listens, I've had enough!"),
    # Group-level texts: they name the group and nothing more.
    "plain": ("So {who} brought {what} today.", "Oh, {what}. Well, look at that.", "{who} told me about {what}."),
    "worried": ("I don't know what to do about {what}.", "{who} hasn't called since {what}.",
                "I keep thinking about {what}."),
    "hostile": ("Just look at {what}, {who}.", "{who} did it again with {what}.", "Why would {who} do that?"),
}, "zh": {
    "neutral": ("{who}说{what}安排在周二。", "我把{what}放在桌子上了。", "好的，{who}晚点会打电话说{what}的事。",
                "我们聊了一会儿{what}。"),
    "surprise": ("等等，{who}真的那样做了？", "不会吧！{what}已经到了？", "真没想到{who}会来！", "真的吗？{what}就这样定了？"),
    "joy": ("太好了，{who}很喜欢{what}！", "耶！{what}非常顺利！", "{what}让我好开心！", "{who}让我今天特别高兴！"),
    "fear": ("我好怕{what}出问题。", "求你了，别让{who}知道。", "万一{what}搞砸了怎么办？我好害怕。",
             "{who}，你听到那个声音了吗？有人在吗？"),
    "sadness": ("我好想念{who}。", "{what}取消了，我心里好空。", "没人记得，{who}连电话都没打。", "结束了，我失去了{what}。"),
    "disgust": ("呃，{what}好难闻。", "真恶心，{who}，快拿开。", "我受不了{who}吃东西的样子。", "咦，{what}上面全是黏糊糊的东西。"),
    "anger": ("{who}怎么敢动{what}！", "我气死了，{who}又骗我！", "住手！你把{what}毁了！", "{who}从来不听，我受够了！"),
    "plain": ("所以{who}今天带来了{what}。", "哦，{what}。你看看。", "{who}跟我说了{what}的事。"),
    "worried": ("我不知道{what}该怎么办。", "自从{what}以后{who}就没打过电话。", "我一直在想{what}。"),
    "hostile": ("你看看{what}，{who}。", "{who}又在{what}上这样。", "{who}为什么要那样做？"),
}}
TEXT_GROUP_NAMES = dict(zip(GROUPS["text"], ("plain", "worried", "hostile")))
GROUP_TEXT_SHARE = 0.25  # how often the transcript is a group-level text rather than one of a single emotion


def plan(cfg: DemoConfig) -> list[ClipPlan]:
    """The corpus without media: balanced emotions, splits in whole blocks of 7, half English, half Chinese."""
    blocks = cfg.n_clips // len(EMOTIONS)
    n_dev, n_test = (max(1, round(blocks * share)) for share in (cfg.dev, cfg.test))
    if blocks - n_dev - n_test < 1:
        raise ValueError(f"demo corpus: n_clips={cfg.n_clips} is too small for train, dev and test; "
                         f"use at least {7 * (n_dev + n_test + 1)}")
    rng = np.random.default_rng(cfg.seed)
    order = [e for _ in range(blocks + 1) for e in rng.permutation(EMOTIONS)][:cfg.n_clips]
    languages = rng.permutation((["en", "zh"] * cfg.n_clips)[:cfg.n_clips])
    train_end, dev_end = 7 * (blocks - n_dev - n_test), 7 * (blocks - n_test)
    clips = []
    for i, (emotion, language) in enumerate(zip(order, languages)):
        # Dev and test take whole blocks from the end so they stay balanced; a partial last block goes to train.
        split = "train" if i < train_end or i >= 7 * blocks else "dev" if i < dev_end else "test"
        low, high = SENTIMENT[emotion]
        sentiment = round(float(rng.uniform(low, high)), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
        shows = {m: str(rng.choice(group_of(m, emotion))) for m in GROUPS}
        if rng.random() < GROUP_TEXT_SHARE:
            shows["text"] = TEXT_GROUP_NAMES[group_of("text", emotion)]
        template = rng.choice(_TEMPLATES[language][shows["text"]])
        text = template.format(who=rng.choice(_WHO[language]), what=rng.choice(_WHAT[language]))
        if language == "en":  # a slot may open a sentence
            text = re.sub(r"(^|[.!?] )([a-z])", lambda m: m[1] + m[2].upper(), text)
        frames = max(1, round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * cfg.fps))
        clips.append(ClipPlan(i, f"demo{i:04d}", split, str(language), str(emotion), sentiment, shows, text, frames))
    return clips



def clip_rng(cfg: DemoConfig, clip: ClipPlan, modality: str) -> np.random.Generator:
    """The generator of one clip's rendering in one modality: independent of every other clip and modality."""
    return np.random.default_rng([cfg.seed, clip.index, ("audio", "visual").index(modality)])
