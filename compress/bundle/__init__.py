"""The hand-off bundle an app team ships: model card, writing, ``verify``, the reference runner, ``process``."""
