"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as a plain-PyTorch BERT encoder.

6 layers, width 384, 12 heads of 32, feed-forward 1536, exact (erf) GELU, LayerNorm
eps 1e-12, absolute positions; then mean pooling over the attention mask and L2
normalisation, as sentence-transformers does for this model. Parameter names are
those of the Hugging Face `BertModel` checkpoint (`embeddings.*`, `encoder.layer.N.*`),
so the package's model.safetensors loads strictly (its unused `pooler.*` and the
`position_ids` buffer are left out; see build_minilm.py).

forward(input_ids, attention_mask): both (batch, sequence) integer tensors (int64 in
PyTorch, int32 in Core ML); returns the embedding (batch, 384), unit length.

Written for ct.convert with a flexible batch and a flexible sequence length: no shape
arithmetic is traced. Positions are the running count of tokens (cumsum), heads are
split with `unflatten` by the known head size and merged with `flatten`, and masked
keys get -10000 (finite in float16, unlike finfo.min)."""

import torch
from torch import nn

VOCAB = 30522
WIDTH = 384
LAYERS = 6
HEADS = 12
HEAD_SIZE = WIDTH // HEADS
FEED_FORWARD = 1536
MAX_POSITIONS = 512
EPS = 1e-12
MASKED = -10000.0


class Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, WIDTH)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, WIDTH)
        self.token_type_embeddings = nn.Embedding(2, WIDTH)
        self.LayerNorm = nn.LayerNorm(WIDTH, eps=EPS)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(WIDTH, WIDTH)
        self.key = nn.Linear(WIDTH, WIDTH)
        self.value = nn.Linear(WIDTH, WIDTH)

    @staticmethod
    def heads(x: torch.Tensor) -> torch.Tensor:  # (B, T, W) -> (B, H, T, D)
        return x.unflatten(-1, (HEADS, HEAD_SIZE)).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (HEAD_SIZE ** -0.5) + mask_bias
        context = torch.matmul(scores.softmax(dim=-1), v)  # (B, H, T, D)
        return context.transpose(1, 2).flatten(2)


class DenseNorm(nn.Module):
    """Linear, then LayerNorm of (that + residual): BERT's `*.output` blocks."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, WIDTH)
        self.LayerNorm = nn.LayerNorm(WIDTH, eps=EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = SelfAttention()
        self.output = DenseNorm(WIDTH)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(WIDTH, FEED_FORWARD)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate()
        self.output = DenseNorm(FEED_FORWARD)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class MiniLMEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings()
        self.encoder = Encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.long()
        x = self.embeddings(input_ids)
        mask = attention_mask.to(x.dtype)
        mask_bias = (1.0 - mask[:, None, None, :]) * MASKED  # (B, 1, 1, T) added to every head's scores
        hidden = self.encoder(x, mask_bias)
        weights = mask.unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return pooled / torch.linalg.vector_norm(pooled, dim=1, keepdim=True).clamp(min=1e-12)


def build_model() -> MiniLMEmbedder:
    return MiniLMEmbedder()
