from xinhe.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListNodesRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_common_pb2.Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_common_pb2.Node, _Mapping]]] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolCapacity(_message.Message):
    __slots__ = ("pool", "region", "family", "model", "nodes_ready", "nodes_total", "devices_total", "devices_allocated", "devices_free", "devices_unavailable", "device_memory_bytes")
    POOL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODES_READY_FIELD_NUMBER: _ClassVar[int]
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FREE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    pool: str
    region: str
    family: str
    model: str
    nodes_ready: int
    nodes_total: int
    devices_total: int
    devices_allocated: int
    devices_free: int
    devices_unavailable: int
    device_memory_bytes: int
    def __init__(self, pool: _Optional[str] = ..., region: _Optional[str] = ..., family: _Optional[str] = ..., model: _Optional[str] = ..., nodes_ready: _Optional[int] = ..., nodes_total: _Optional[int] = ..., devices_total: _Optional[int] = ..., devices_allocated: _Optional[int] = ..., devices_free: _Optional[int] = ..., devices_unavailable: _Optional[int] = ..., device_memory_bytes: _Optional[int] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolCapacity]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolCapacity, _Mapping]]] = ...) -> None: ...

class CordonNodeRequest(_message.Message):
    __slots__ = ("node", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: str
    reason: str
    def __init__(self, node: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UncordonNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class GetClusterSummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobStateCount(_message.Message):
    __slots__ = ("state", "count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    count: int
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class ClusterSummary(_message.Message):
    __slots__ = ("pools", "jobs", "agents_connected")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolCapacity]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStateCount]
    agents_connected: int
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolCapacity, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[JobStateCount, _Mapping]]] = ..., agents_connected: _Optional[int] = ...) -> None: ...
