"""The extraction loop: select -> query -> account -> (PoW) -> train the stolen model -> log."""
