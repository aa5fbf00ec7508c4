import os

from bigbatch.cli import main

if "TORCHELASTIC_ERROR_FILE" in os.environ:  # a rank under torchrun: its failure summary shows our traceback
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

raise SystemExit(main())
