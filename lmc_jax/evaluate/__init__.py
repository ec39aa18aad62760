"""Domain-generalisation evaluation of embeddings."""
