"""The serving side of the image: the MMS handler for TensorFlow text classifiers and its entrypoint."""
