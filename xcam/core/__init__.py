"""The lowest layer of xcam: pieces every other layer may import, importing none of them."""
