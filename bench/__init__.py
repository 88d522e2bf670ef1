"""dotsd's benchmarks: ``python -m bench coap`` measures dotsd and libcoap in the same run.

See bench/README.md. The load generator is a small C program (bench/loadgen.c), built on
first use into bench/.build/.
"""
