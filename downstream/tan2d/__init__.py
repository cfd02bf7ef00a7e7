"""2D-TAN (2D temporal adjacent networks) for video language grounding: the ``vlg`` task.

* ``features``: average-to-fixed-length resampling of feature sequences, HDF5 reading;
* ``model``: the sparse 2D temporal map, fusion with the sentence, MapConv, the ``TAN2D`` head;
* ``text``: word vectors for the sentence LSTM (GloVe file, or the text encoder's word pieces);
* ``proposals``: IoU targets, scaled BCE, NMS, map cells to seconds;
* ``task``: configuration, training/evaluation, registration as ``vlg``.
"""
