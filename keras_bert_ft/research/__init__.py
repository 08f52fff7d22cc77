"""Research kit: several seeds, layer sweeps, weight/representation diffs, probes, CKA."""
