"""The Kubernetes executor: an agent mode that runs replicas as pods.

``xinhe agent --executor kubernetes`` manages a whole cluster instead of one
host (like Armada's executor). Nothing here imports the ``kubernetes``
client at module import time except :mod:`agents.kubernetes.run`'s loader,
so the plain node agent does not need the ``k8s`` extra.
"""
