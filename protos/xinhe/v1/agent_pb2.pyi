import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from xinhe.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_1: _ClassVar[ProtocolVersion]

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_STARTING: _ClassVar[ReplicaState]
    REPLICA_STATE_RUNNING: _ClassVar[ReplicaState]
    REPLICA_STATE_SUCCEEDED: _ClassVar[ReplicaState]
    REPLICA_STATE_FAILED: _ClassVar[ReplicaState]
    REPLICA_STATE_STOPPED: _ClassVar[ReplicaState]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_1: ProtocolVersion
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_STARTING: ReplicaState
REPLICA_STATE_RUNNING: ReplicaState
REPLICA_STATE_SUCCEEDED: ReplicaState
REPLICA_STATE_FAILED: ReplicaState
REPLICA_STATE_STOPPED: ReplicaState

class ReplicaRef(_message.Message):
    __slots__ = ("job_id", "attempt", "rank", "epoch")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    rank: int
    epoch: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., rank: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("protocol_version", "node_name", "pool", "region", "address", "devices", "cpu_millis", "memory_bytes", "agent_version", "replicas", "cost_per_device_hour")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    COST_PER_DEVICE_HOUR_FIELD_NUMBER: _ClassVar[int]
    protocol_version: ProtocolVersion
    node_name: str
    pool: str
    region: str
    address: str
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    cpu_millis: int
    memory_bytes: int
    agent_version: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    cost_per_device_hour: float
    def __init__(self, protocol_version: _Optional[_Union[ProtocolVersion, str]] = ..., node_name: _Optional[str] = ..., pool: _Optional[str] = ..., region: _Optional[str] = ..., address: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ..., cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., agent_version: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., cost_per_device_hour: _Optional[float] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "stop")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    stop: _containers.RepeatedCompositeFieldContainer[ReplicaRef]
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stop: _Optional[_Iterable[_Union[ReplicaRef, _Mapping]]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("session_id", "heartbeat", "inventory", "status", "logs", "progress")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat: Heartbeat
    inventory: InventoryUpdate
    status: ReplicaStatus
    logs: _common_pb2.LogChunk
    progress: Progress
    def __init__(self, session_id: _Optional[str] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., inventory: _Optional[_Union[InventoryUpdate, _Mapping]] = ..., status: _Optional[_Union[ReplicaStatus, _Mapping]] = ..., logs: _Optional[_Union[_common_pb2.LogChunk, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("ref", "step", "steps_per_second", "time", "last_checkpoint")
    REF_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ref: ReplicaRef
    step: int
    steps_per_second: float
    time: _timestamp_pb2.Timestamp
    last_checkpoint: _timestamp_pb2.Timestamp
    def __init__(self, ref: _Optional[_Union[ReplicaRef, _Mapping]] = ..., step: _Optional[int] = ..., steps_per_second: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_checkpoint: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time", "devices", "running")
    TIME_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    running: _containers.RepeatedCompositeFieldContainer[ReplicaRef]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ..., running: _Optional[_Iterable[_Union[ReplicaRef, _Mapping]]] = ...) -> None: ...

class InventoryUpdate(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("ref", "state", "exit_code", "message", "time", "agent_sequence")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ref: ReplicaRef
    state: ReplicaState
    exit_code: int
    message: str
    time: _timestamp_pb2.Timestamp
    agent_sequence: int
    def __init__(self, ref: _Optional[_Union[ReplicaRef, _Mapping]] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_sequence: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("launch", "stop", "ack", "checkpoint")
    LAUNCH_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    launch: LaunchReplica
    stop: StopReplica
    ack: Ack
    checkpoint: CheckpointReplica
    def __init__(self, launch: _Optional[_Union[LaunchReplica, _Mapping]] = ..., stop: _Optional[_Union[StopReplica, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointReplica, _Mapping]] = ...) -> None: ...

class LaunchReplica(_message.Message):
    __slots__ = ("ref", "job_name", "tenant", "command", "env", "working_dir", "family", "model", "device_indices", "world_size", "master_addr", "master_port", "max_runtime", "checkpoint_dir", "cpu_millis", "memory_bytes", "image")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDICES_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ref: ReplicaRef
    job_name: str
    tenant: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    working_dir: str
    family: str
    model: str
    device_indices: _containers.RepeatedScalarFieldContainer[int]
    world_size: int
    master_addr: str
    master_port: int
    max_runtime: _duration_pb2.Duration
    checkpoint_dir: str
    cpu_millis: int
    memory_bytes: int
    image: str
    def __init__(self, ref: _Optional[_Union[ReplicaRef, _Mapping]] = ..., job_name: _Optional[str] = ..., tenant: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., working_dir: _Optional[str] = ..., family: _Optional[str] = ..., model: _Optional[str] = ..., device_indices: _Optional[_Iterable[int]] = ..., world_size: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., max_runtime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., checkpoint_dir: _Optional[str] = ..., cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., image: _Optional[str] = ...) -> None: ...

class StopReplica(_message.Message):
    __slots__ = ("ref", "reason", "grace")
    REF_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    ref: ReplicaRef
    reason: str
    grace: _duration_pb2.Duration
    def __init__(self, ref: _Optional[_Union[ReplicaRef, _Mapping]] = ..., reason: _Optional[str] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CheckpointReplica(_message.Message):
    __slots__ = ("ref", "timeout", "grace", "reason")
    REF_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ref: ReplicaRef
    timeout: _duration_pb2.Duration
    grace: _duration_pb2.Duration
    reason: str
    def __init__(self, ref: _Optional[_Union[ReplicaRef, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("agent_sequence", "logs")
    AGENT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    agent_sequence: int
    logs: _containers.RepeatedCompositeFieldContainer[LogAck]
    def __init__(self, agent_sequence: _Optional[int] = ..., logs: _Optional[_Iterable[_Union[LogAck, _Mapping]]] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("job_id", "attempt", "rank", "stream", "offsets")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    rank: int
    stream: _common_pb2.LogStream
    offsets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., rank: _Optional[int] = ..., stream: _Optional[_Union[_common_pb2.LogStream, str]] = ..., offsets: _Optional[_Iterable[int]] = ...) -> None: ...
