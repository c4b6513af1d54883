"""The recurrent cell of DARTS (Liu, Simonyan, Yang, ICLR 2019, Sec. 2.1, 3.1.2): its genotypes
(``genotype``), the cell and the language model around it (``model``), the search on a text corpus
(``search``, a subclass of the image search) and the training of a cell's language model (``train``).
The search space itself is ``spaces/darts_rnn.py``."""
