"""What is run: agent workloads as scenario files, traces recorded or imported, and the record proxy."""
