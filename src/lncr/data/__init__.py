"""Slides as model inputs, below both training and the feature cache: a stain ×
magnification's slides with their sides (``entries``), bags of tiles drawn from their stores
(``bags``), tiles made into the encoder's input on the device (``inputs``), devices and ranks
(``distributed``) and the numeric precision (``precision``)."""
