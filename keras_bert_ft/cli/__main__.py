import sys

from keras_bert_ft.cli.app import main

sys.exit(main())
