"""Hand-written Triton kernels behind ops where FlexAttention cannot fuse as much (see each module).

Nothing here is imported by ``import visionzoo``: a backend that needs a kernel imports its module when it first
runs, so Triton is needed only by the calls that use it. Each kernel is wrapped as a ``torch.library.triton_op``,
so ``torch.compile`` and ``torch.export`` see one op. Set ``TRITON_INTERPRET=1`` before the first import to run
the kernels on the CPU through Triton's interpreter (the tests do).
"""
