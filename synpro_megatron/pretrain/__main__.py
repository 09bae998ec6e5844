import sys

from synpro_megatron.pretrain.launch import main

if __name__ == "__main__":
    sys.exit(main())
