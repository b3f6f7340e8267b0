"""One module per Hugging Face family, each defining `FAMILY` (a model/hf/family.py Family). The registry
(model/hf/registry.py) finds every module here, so a new family is one new file in this package. A family module
imports model/hf/family_kit.py for what it shares with others, never another family module."""
