"""mvm.engine.admission: every launch is admitted through a signed ExecutionPlan (keys,
plans, the nonce store) and recorded in the hash-chained audit log (gate, audit, audit_head)."""
