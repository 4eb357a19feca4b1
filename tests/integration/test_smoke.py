from stage0.ledger import store


def test_append_and_read_back(kernel_conn, operator):
    [span] = store.append(kernel_conn, [{"entity_type": "note", "who": "t", "this": "x",
                                          "owner_id": "u", "tenant_id": "a"}], operator)
    assert store.head(kernel_conn, span["id"]) == span


def test_cli_verify(cli):
    assert "ok:" in cli("verify").stdout
