"""What ``turnbench`` commands do beyond one run: bench (the matrix and its report), gate, advise, migration."""
