"""What a run is made of and the means to run it.

The run plan (cells, run config, what execution gathers), closed and open loops, server processes, network
emulation, and the load generator watching itself and the machine.
"""
