"""Layer-wise learning rates: a factor per encoder variable, decaying from the top layer down.

The head trains at the base learning rate. The encoder trains at `encoder_rate` (a
fraction of it, 1 by default): the top layer and the pooler at `encoder_rate`, the layer
k below the top at `encoder_rate * decay**k`, the embeddings at `encoder_rate *
decay**num_layers` (layer-wise decay as in ULMFiT, ELECTRA and Sun et al. 2019). The
factors are keyed by variable name for `AdamW(learning_rate_multipliers=...)`, which
applies them inside `model.fit`'s step, under any strategy and under XLA.
"""

from typing import Dict, List, Tuple

from keras_bert_ft.errors import bad_argument


def group_depths(groups) -> Dict[str, int]:
    """Group name -> how many layers below the top it sits (pooler and top layer: 0)."""
    layers = [g for g in groups if g.startswith("layer_")]
    depths = {"pooler": 0, "embeddings": len(layers)}
    for i, _ in enumerate(layers):
        depths[f"layer_{i}"] = len(layers) - 1 - i
    return depths


def group_multipliers(groups, *, layer_decay: float = 1.0,
                      encoder_rate: float = 1.0) -> Dict[str, float]:
    """Group name -> factor of the base learning rate."""
    check_rates(layer_decay, encoder_rate)
    depths = group_depths(groups)
    return {g: float(encoder_rate * layer_decay ** depths[g]) for g in groups}


def layer_multipliers(model_or_encoder, *, layer_decay: float = 1.0,
                      encoder_rate: float = 1.0) -> Dict[str, float]:
    """Variable name (no `:0`) -> factor of the base learning rate, for every encoder
    variable (frozen ones included, so they get their rate when they are unfrozen).

    Args:
        model_or_encoder: a `FineTuneModel` (its `.encoder`) or a `HubEncoder`.
        layer_decay: factor per layer from the top, in (0, 1].
        encoder_rate: the encoder's peak rate as a fraction of the head's, > 0.

    Example:
        >>> factors = layer_multipliers(model, layer_decay=0.8)
        >>> optimizer = create_optimizer(1e-4, total_steps=100,
        ...                              learning_rate_multipliers=factors)
    """
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    groups = encoder.layer_groups()
    factors = group_multipliers(groups, layer_decay=layer_decay, encoder_rate=encoder_rate)
    return {variable_name(v): factors[g] for g, vs in groups.items() for v in vs}


def variable_name(variable) -> str:
    return variable.name.split(":")[0]


def rate_rows(model, learning_rate: float, multipliers: Dict[str, float]) -> List[Tuple[str, float]]:
    """(group, peak learning rate) per encoder group, then the head."""
    groups = model.encoder.layer_groups()
    rows = []
    for group, variables in groups.items():
        factors = {multipliers.get(variable_name(v), 1.0) for v in variables} or {1.0}
        rows.append((group, learning_rate * max(factors)))
    rows.append(("head", learning_rate))
    return rows


def format_rates(rows) -> str:
    return "\n".join(f"{group:<14}{rate:>14.3g}" for group, rate in rows)


def check_rates(layer_decay: float, encoder_rate: float) -> None:
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)) \
            or not 0.0 < layer_decay <= 1.0:
        raise bad_argument("layer_decay", layer_decay, "a float in (0, 1]")
    if isinstance(encoder_rate, bool) or not isinstance(encoder_rate, (int, float)) \
            or not encoder_rate > 0:
        raise bad_argument("encoder_rate", encoder_rate, "a float > 0")
