-- Defence in depth beside the triggers: the owning role (the service's own
-- database user) loses UPDATE/DELETE/TRUNCATE on the audit log. Only a
-- superuser can still bypass both, and /audit/verify detects what it does.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER;
