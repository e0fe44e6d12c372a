"""Stage one's public face: what the other stages may use of extract (pipeline's egmf-predict, egmf-demo and
egmf-bench import from here and nowhere else in extract). The rest of the folder is extract's own.

  extract(ExtractConfig) -> Summary        the extraction run (egmf-extract); threads_per_worker(cfg) its threads
  get(name).load(root, **options)          a dataset adapter's records (a Corpus); main_language(corpus)
  preset_encoders(preset, language)        a preset's encoders for a language, loaded once per process
  EncoderConfig, build_encoder             one encoder from what a cache recorded (egmf-predict)
  Utterance                                one record: an id, its media, its transcript, its language
  submit_decodes(pool, utts, encoders)     decode the records' media as a run does (futures, one per record)
  encode_block(utts, decoded, encoders, b) their features and why any is missing, in encoder batches of b
  DemoConfig                               the generated demo corpus's parameters
"""
from __future__ import annotations

from .datasets import get
from .datasets.demo import DemoConfig
from .encoders import EncoderConfig, build_encoder
from .presets import load_preset
from .records import Utterance
from .run import (ExtractConfig, Summary, cached_encoder, encode_block, extract, main_language, submit_decodes,
                  threads_per_worker)

__all__ = ["DemoConfig", "EncoderConfig", "ExtractConfig", "Summary", "Utterance", "build_encoder", "encode_block",
           "extract", "get", "main_language", "preset_encoders", "submit_decodes", "threads_per_worker"]


def preset_encoders(preset: str, language: str, device: str = "auto") -> dict:
    """modality -> encoder of a preset (extract/presets/) for a corpus in language, shared with the extraction
    runs of this process."""
    return {m: cached_encoder(c, device) for m, c in load_preset(preset).encoders(language).items()}
