"""Frozen features: embeddings of an image set cached in safetensors (`embed.embeddings`) and the
k-NN and linear probes fitted on them (`embed.probe`)."""
