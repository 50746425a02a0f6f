"""Network architectures for the custom trainers, built from dynamic_network_architectures blocks."""
