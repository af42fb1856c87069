"""The Ray cluster: bring-up, join, inventory, doctor, and attaching for a serve run."""
