"""regionscribe's training side: the synthetic corpus, samples from human annotations, public datasets, the two-stage
training loop, and evaluation. Built on regionscribe.model; the model library never imports it."""
