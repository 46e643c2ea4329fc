"""Scale-out on Ray: engine replicas behind the speech API (`serve --ray`) and an actor pool for batch jobs.

Ray is an optional extra (`pip install 'cosyvoice-onnx[ray]'`); nothing here imports it until a command asks.
"""
