// placeholder until the forward pass lands
