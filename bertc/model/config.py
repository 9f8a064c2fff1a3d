"""`BertConfig`: the model hyper-parameters of a Google `bert_config.json`.

A plain value object with a JSON round-trip, as in google-research/bert's
`modeling.BertConfig`, except that it refuses what it cannot build: unknown keys,
missing keys, wrong types and impossible values (hidden size not a multiple of the
head count, an activation other than GELU) are reported as one line naming the
file and the field.
"""

import dataclasses
import json
import logging
import os

from bertc.errors import BertcError

# Keys some published Google configs carry that do not change the network
# (multilingual checkpoints have the `pooler_*` and `directionality` keys).
_IGNORED_KEYS = frozenset({
    "directionality", "pooler_fc_size", "pooler_num_attention_heads",
    "pooler_num_fc_layers", "pooler_size_per_head", "pooler_type",
})
_SUPPORTED_ACTIVATIONS = ("gelu",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (Google's names and meanings)."""

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    # Where the values came from, for error messages (not a field: not in to_dict()).
    where: dataclasses.InitVar[str] = "bert_config"

    def __post_init__(self, where):
        self.validate(where)

    @property
    def head_size(self) -> int:
        """Width of one attention head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    def validate(self, where: str = "bert_config") -> None:
        """Raises BertcError when a field has a wrong type or an impossible value."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            type_name = field.type if isinstance(field.type, str) else field.type.__name__
            expected = {"int": int, "float": (int, float), "str": str}[type_name]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise BertcError(
                    f"{where}: field '{field.name}' is {value!r}; expected {type_name}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise BertcError(f"{where}: field '{name}' is {getattr(self, name)}; "
                                 "expected a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise BertcError(
                f"{where}: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}; expected "
                "hidden_size = num_attention_heads * head_size")
        if self.hidden_act not in _SUPPORTED_ACTIVATIONS:
            raise BertcError(f"{where}: hidden_act is {self.hidden_act!r}; expected one of "
                             f"{', '.join(_SUPPORTED_ACTIVATIONS)} (Google BERT's exact GELU)")

    @classmethod
    def from_dict(cls, values: dict, where: str = "bert_config") -> "BertConfig":
        """Builds a config from a dict with Google's keys; unknown keys are refused."""
        if not isinstance(values, dict):
            raise BertcError(f"{where}: expected a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - _IGNORED_KEYS)
        if unknown:
            raise BertcError(f"{where}: unknown field(s) {', '.join(unknown)}; expected only "
                             f"Google BERT config fields ({', '.join(sorted(known))})")
        ignored = sorted(set(values) & _IGNORED_KEYS)
        if ignored:
            logging.info("%s: ignoring fields that do not change the network: %s",
                         where, ", ".join(ignored))
        if "vocab_size" not in values:
            raise BertcError(f"{where}: missing field 'vocab_size'; expected an integer")
        required = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")
        missing = [k for k in required if k not in values]
        if missing:
            raise BertcError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in values.items() if k in known}, where=where)

    @classmethod
    def from_json_file(cls, path: str) -> "BertConfig":
        """Reads `bert_config.json`; every failure names the file."""
        if not os.path.isfile(path):
            raise BertcError(f"{path}: file not found; expected a Google bert_config.json")
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (OSError, UnicodeDecodeError) as e:
            raise BertcError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
        except json.JSONDecodeError as e:
            raise BertcError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} "
                             f"({e.msg}); expected a Google bert_config.json") from None
        return cls.from_dict(values, where=path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
