"""Building blocks of the decoder, each a small module chosen by ModelConfig."""
