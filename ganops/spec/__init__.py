"""Job specs: pydantic models and the YAML loader."""

from ganops.spec.loader import apply_overrides, dump, load, read_yaml, validate
from ganops.spec.models import GANJob, GANJobSpec

__all__ = ["GANJob", "GANJobSpec", "apply_overrides", "dump", "load", "read_yaml", "validate"]
