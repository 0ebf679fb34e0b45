"""The public surface of each package is pinned."""

from __future__ import annotations

from trustbus import agents, bus, ledger


def test_bus_exports() -> None:
    assert sorted(bus.__all__) == sorted(
        [
            "SCHEMA_VERSION", "Approval", "Checkpoint", "decode_checkpoint", "encode_checkpoint",
            "Decision", "Dropped", "EffectClass", "EffectRecord", "MemoryValue", "Verdict",
            "decode_decision", "decode_decisions", "decision_id", "recorded_decisions", "encode_decision_group",
            "decode_effect", "decode_memory_value", "encode_decision", "encode_effect",
            "encode_memory_value", "BadCountersignature", "BadSignature", "Bus", "BusError", "ConfigError",
            "ConsumerSettings", "ContentType", "Delivery", "ClusterMembership", "EmbeddedCluster", "EmbeddedServer",
            "Health", "EnvelopeFields", "log_about", "ServiceResponder", "discover_services",
            "LoopCollector", "MetricsServer", "ConsumerLag", "ConsumerLagPoller", "collected",
            "Envelope", "Identity",
            "KeyDirectory", "KeyGrant", "KeyNotYetValid", "Keyring", "KeyringError", "KeyringStore", "Kind",
            "Limits", "Malformed", "Mediation", "MissingSignature", "NotMediated", "Opened", "PortInUse",
            "ProvisionReport", "QuarantineRecord", "Replayed", "RevokedKey", "Role", "Sealed", "SeenIds",
            "SenderMismatch", "ServerBinaryNotFound", "ServerError", "SignedGrant", "Skew", "TailItem",
            "TooLarge", "TransientError", "TransportError", "UnknownKey", "UnsupportedVersion",
            "UntrustedKey", "VerificationError", "countersign", "decode_envelope",
            "decode_quarantine_record", "default_keys_dir", "encode_envelope", "encode_key_id",
            "find_server_binary", "init_tenant", "list_keys", "new_envelope", "new_id", "new_key",
            "open_envelope", "pinned_admin_key", "provision", "render_bootstrap_config",
            "render_tenant_config", "revoke_key", "rotate_key", "seal", "sign_grant", "subjects", "tail",
            "tenant_partitions", "tenant_stream_config", "verify_key",
            "Bounds", "MalformedPayload", "decode_json", "decode_msgpack",
            "AGENT_API_PREFIX", "own_account", "reload_until_wired",
            "StoredMessage", "Bucket", "Entry", "SubjectLog", "Appended",
            "Conflict", "NotFound", "Refused", "Timeout", "Unavailable",
            "TenantStream", "KeyringRevision", "DurableReader", "DurableSettings",
            "WorkQueue", "WorkQueueSettings", "WorkItem",
            "HEADER_CKEY", "HEADER_KEY", "HEADER_MSG_ID", "HEADER_SIG", "HEADER_TRACEPARENT", "stop_on_signals",
            "configure_tracing", "current_trace", "record_span", "traced", "tracing_asked", "tracing_enabled",
            "use_tracer",
            "decode_signed_grant", "decode_memory_write", "RejectionSummary", "decode_rejection_summary",
            "encode_rejection_summary", "subject_owner", "summarise", "summary_msg_id",
            "DUPLICATE_WINDOW_S", "LABEL_PATTERN", "MAX_MSG_SIZE", "MemoryWrite",
            "NAME_PATTERN", "RejectionLog", "SignedValue",
            "decode_memory_payload", "decode_quarantine_payload", "decode_signed", "die_with_parent",
            "rejection", "run_then_settle", "unless_stopped", "cancel_and_wait", "side_by_side", "lazy_names",
            "memory_value", "open_coordinator_value", "open_memory_value", "StoreFull", "wrong_role",
        ]
    )  # fmt: skip
    for name in bus.__all__:
        assert hasattr(bus, name), name


def test_every_reason_code_is_distinct() -> None:
    codes = [cls.reason for cls in bus.VerificationError.__subclasses__()]
    assert len(codes) == len(set(codes))


def test_agents_exports() -> None:
    assert sorted(agents.__all__) == sorted(
        [
            "Agent", "AgentError", "Context", "Coordinator", "CoordinatorState", "Deferral",
            "Handlers", "Limits", "Policy", "PolicyError", "RateLimit", "Rule", "RuntimeSetupError", "connect_agent",
            "decide", "load_policy", "parse_policy",
            "read_checkpoint", "run_agent",
            "EffectDenied", "EffectError", "EffectHeld", "HeldCall", "Tool", "ToolImplementation", "ToolRegistry",
            "ToolRegistryError", "Toolbox",
            "UnknownTool", "idempotency_key", "load_tools", "parse_tools", "McpBinding", "McpServer",
            "answer", "instruction_verb", "list_held", "list_held_requests", "PartitionStatus", "coordinator_status",
            "load_agent", "redecide", "reexecute", "serve_agent", "retention_needs",
            "serve_coordinator", "MemoryOutcome",
        ]
    )  # fmt: skip
    for name in agents.__all__:
        assert hasattr(agents, name), name


def test_ledger_exports() -> None:
    assert sorted(ledger.__all__) == sorted(
        [
            "CHAIN_DOMAIN", "GENESIS", "Compensation", "RollbackPlan", "compensated_keys",
            "execute_rollback", "plan_rollback", "rollback_correlation", "verified_effects", "Incident", "Step",
            "build_incident",
            "checkpoint_before",
            "load_bundle_messages", "load_messages", "step_dict", "Break", "Bundle", "BundleEntry",
            "BundleError", "LedgerError", "StoredMessage", "VerifyReport", "chain_hash", "chained_headers",
            "export", "export_bundle", "read_bundle", "read_stream", "verify_bundle", "verify_messages",
            "verify_stream", "ProjectionError", "QueryError", "ServiceError", "connect", "query",
            "CheckedProof", "ProofError", "check_proof", "prove_from_bundle", "prove_from_stream",
            "ServiceSettings", "checked_dict", "encode_proof", "read_catalogue",
            "serve_ledger",
            "ArchiveError", "Need", "Segment", "archive", "consumer_needs", "purge_archived", "segments",
            "load_across", "verify_archive",
        ]
    )  # fmt: skip
    for name in ledger.__all__:
        assert hasattr(ledger, name), name
