"""Speed and memory measurements (`make bench`); never timed tests."""
