from stage0 import ledger


def test_append_and_read_back(kernel_conn, operator):
    [span] = ledger.append(kernel_conn, [{"entity_type": "note", "who": "t", "this": "x",
                                          "owner_id": "u", "tenant_id": "a"}], operator)
    assert ledger.head(kernel_conn, span["id"]) == span


def test_cli_verify(cli):
    assert "ok:" in cli("verify").stdout
