"""Model size: the one count of a model's non-embedding parameters (Kaplan et al.'s N)."""


def non_embedding_params(size, decoder: bool = False) -> int:
    """Weights of one Transformer stack, without embeddings (Kaplan et al.'s N)."""
    attention = (8 if decoder else 4) * size.hidden ** 2  # decoder: self- and cross-attention
    return size.layers * (attention + 2 * size.hidden * size.ffn)


def model_non_embedding_params(size, kind: str) -> int:
    """N of a whole model: "mlm" (a RoBERTa encoder) or "mt" (encoder plus decoder, each `layers` deep)."""
    if kind == "mt":
        return non_embedding_params(size) + non_embedding_params(size, decoder=True)
    return non_embedding_params(size)
