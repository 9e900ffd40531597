"""Looking inside the model: WB/residual embeddings and their figures."""
