"""`python -m llama_cpp.server` with llama.cpp's extra weight layouts (AMX, repacking) switched
off when LLAMACPP_EXTRA_BUFTS=0: the server has no flag for it, and on this VM the AMX layout
that llama.cpp picks for Q4_1 crashes on the first request (the tools are built without AMX for
the same reason: llamacpp_tools.sh). Runs under the llama-cpp-python venv; arguments as the
server's."""

import os
import runpy

import llama_cpp.llama_cpp as bindings  # what llama_cpp.llama.Llama calls

if os.environ.get("LLAMACPP_EXTRA_BUFTS", "1") == "0":
    default_params = bindings.llama_model_default_params

    def model_params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    bindings.llama_model_default_params = model_params

runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
