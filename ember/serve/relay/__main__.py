"""``python -m ember.serve.relay``: a gRPC front-end process (``ember.serve.relay.frontend``)."""
import sys

from ember.serve.relay.frontend import main

sys.exit(main())
