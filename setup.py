from setuptools import setup

# kernels/ and recipes/ sit at the top of the repository but install as minibridge.kernels and
# minibridge.recipes, so no generic top-level `kernels` package lands in site-packages.
setup(
    name="minibridge",
    version="0.1.0",
    description="Llama 3 and Gemma 3 training in plain PyTorch with Hugging Face checkpoint import/export",
    python_requires=">=3.10",
    packages=[
        "minibridge", "minibridge.models", "minibridge.bridge", "minibridge.parallel", "minibridge.training",
        "minibridge.training.data", "minibridge.kernels", "minibridge.recipes",
    ],
    package_dir={"minibridge.kernels": "kernels", "minibridge.recipes": "recipes"},
    # torch is installed first by the Makefile (a CPU wheel where there is no CUDA); any torch >= 2.4 does.
    install_requires=["torch>=2.4", "safetensors>=0.4", "numpy", "tqdm", "huggingface_hub", "transformers>=4.50", "tokenizers"],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist", "hypothesis>=6", "transformers>=5.0", "peft", "psutil", "triton>=3.0; platform_system == 'Linux'"],
        "flash": ["flash-attn"],
    },
)
