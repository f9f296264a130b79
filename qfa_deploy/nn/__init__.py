"""Networks: quantized layers, the elastic supernet and the static subnets it extracts."""
