"""Several engines on one shared log: leases per scale set, fencing tokens and their audit."""
