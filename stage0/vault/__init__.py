"""The vault: values the platform keeps encrypted in the ledger (credentials now; encrypted
transcripts and memory reuse the same scheme).

Envelope encryption with AES-256-GCM (the `cryptography` package):

    master key   32 bytes held OUTSIDE the database: $LOGLINE_HOME/keys/master.key (mode 0600)
                 or LOGLINE_MASTER_KEY (hex or base64)                       -> master.py
    data key     32 random bytes per tenant, stored only wrapped by the master key in a
                 platform-signed `tenant_key` span (versions by seq)         -> tenant_keys.py
    a value      sealed by its tenant's data key, with associated data that binds tenant,
                 name and version, in a platform-signed `secret` span        -> credentials.py

crypto.py is pure (no I/O): seal/open_ and the associated-data encoding. Layer: above ledger/
(it reads and writes spans through stage0.ledger), below boot/ and gov/.
"""
