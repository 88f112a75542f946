"""The seed library's ``cortexflow.brain2text``, re-exported from :mod:`cortexflow.models.brain2text`."""

from cortexflow._seed_compat import missing_names
from cortexflow.models.brain2text import Brain2Text, Brain2TextConfig, build_brain2text, decode_bytes, encode_texts

__all__ = ["Brain2Text", "Brain2TextConfig", "build_brain2text", "decode_bytes", "encode_texts"]

_WHY = ("Brain2Text is itself the decoder (byte embeddings, cross-attending blocks with a key/value cache, "
        "tied output head); call model(tokens, memory) for logits, with memory from model.encode_brain(brain)[1]")
__getattr__ = missing_names(__name__, {"BrainTextDecoder": _WHY, "TextDecoderBlock": _WHY})
