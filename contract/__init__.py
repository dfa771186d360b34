"""What training and serving agree on: the feature spec, the log schema, the bundle manifest.

Imports only the standard library, numpy and pyarrow.
"""
