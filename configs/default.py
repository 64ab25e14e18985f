"""Default experiment: a slim SimpleNet on real Fashion-MNIST, >= 90% test accuracy in a few
minutes on 2 CPU cores (measured numbers in README.md).

Variants: `--config=configs/default.py:model=simplenet_cifar_5m,dataset=cifar10,batch_size=256`;
single fields: `--config.optimizer.learning_rate=0.05`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = common.model_config('simplenet_cifar_310k')
  c.model.dropout = 0.0

  c.dataset = ml_collections.ConfigDict({
      'name': 'fashion_mnist',  # a known name, any TFDS image dataset, or 'folder' (data_dir)
      'source': 'auto',        # auto (TFDS if prepared, else local IDX files) | tfds | idx
      'data_dir': '',          # TFDS data dir ('' = ~/tensorflow_datasets); folder: DIR/{train,val}
      'idx_dir': '',           # IDX files dir ('' = the dataset's known location)
      'train_size': 0,         # use N training examples (0 = all from train_offset on)
      'train_offset': 0,       # skip the first N training examples (disjoint runs, shadow models)
      'test_size': 0,          # use the first N test examples (0 = all)
      # Subsets (in memory, after train_size/offset): classes '5-9' or '0,2,4' keeps those,
      # relabelled 0.. in that order (train and test); per_class N keeps the first N training
      # examples of each class; extra_train adds an .npz of uint8 images + labels (the
      # W/gan/samples.npz of --mode=gan), its first extra_per_class of each class (0 = all).
      'classes': '',
      'per_class': 0,
      'extra_train': '',
      'extra_per_class': 0,
      # Example shape: images are resized to it when set ('' = the dataset's own; synthetic:
      # 32,32,3; any rank for synthetic: '128,4' is 1-D).
      'image_shape': '',
      'num_classes': 10,         # synthetic and segmentation_folder (classes incl. background)
      'synthetic_size': 2048,    # synthetic, fashion_mnist_scenes: training examples (test 1/4)
      'max_objects': 3,          # fashion_mnist_scenes: objects per canvas, 1 to this
      'texture': 0.5,            # fashion_mnist_scenes: background stripe/noise contrast, 0-1
      # Where batches come from: memory (the split on every device, gathered in the step) |
      # streaming (read, decoded and batched on the host per process by grain) | auto (memory
      # when the training split fits in memory_limit_mb as uint8, else streaming).
      'pipeline': 'auto',
      'memory_limit_mb': 4096,
      'crop_fraction': 1.0,      # < 1: evaluate a centre crop of this fraction (ImageNet 0.875)
      'num_workers': 2,          # streaming: decoding processes (0 = threads of this process)
      'prefetch_batches': 4,     # streaming: batches read ahead of the step
  })
  # Augmentations of training images, in this order (data/augment.py): random-resized crop
  # (rrc_scale '' = off), pad-and-crop, flip, rotation/zoom, color jitter, and Wu et al.'s
  # color casting, vignetting and lens distortion (0 = off); then cutout after normalization.
  c.augment = ml_collections.ConfigDict({
      'rrc_scale': '', 'rrc_ratio': '0.75,1.3333',  # Inception: '0.08,1' of the area
      'crop_padding': 2, 'flip': True,
      'rotate': 0.0, 'scale': 0.0,              # max degrees; zoom 1 +- scale
      'brightness': 0.0, 'contrast': 0.0, 'saturation': 0.0,  # +- of the range; factor 1 +- c
      'color_cast': 0.0,                        # max per-channel offset, pixels (Wu et al.: 20)
      'vignetting': 0.0,                        # max darkening at the corners, 0-1
      'lens_distortion': 0.0,                   # max |k| of r' = r (1 + k r^2)
      'cutout': 0,             # side of a square zeroed per image after normalization
  })

  c.optimizer = ml_collections.ConfigDict({
      'name': 'sgd',           # sgd | adam | adamw | adadelta | rmsprop | rmsprop_tf
      'learning_rate': 0.2,
      'momentum': 0.9,
      'nesterov': True,
      'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,  # adam/adamw
      'rho': 0.9,              # adadelta / rmsprop decay
      'weight_decay': 5e-4,    # L2 added to the gradient (decoupled for adamw)
      'weight_decay_on': 'all',  # all | kernels (skip biases and norm scales)
      'grad_clip_norm': 0.0,   # 0 = off
  })
  c.schedule = ml_collections.ConfigDict({
      'name': 'onecycle',      # constant | multistep | exponential | cosine | onecycle | linear
      'warmup_epochs': 1.0,    # linear warmup, added in front of any schedule
      'milestones': '',        # multistep: epochs, e.g. '100,190,306'
      'gamma': 0.1,            # multistep factor; exponential: factor every decay_epochs
      'decay_epochs': 1.0,     # exponential: epochs between decays (staircase)
      'final_lr_fraction': 0.0,  # cosine / linear / onecycle end value, relative to the peak
  })
  # Adversarial training (train/objectives/adversarial.py; attacks/ in [0, 1] pixel units, eps
  # as AutoAttack's): pgd = Madry et al. (train on PGD examples only), trades = Zhang et al. (clean loss +
  # trades_beta * KL to the worst point in the ball). Robust accuracy under PGD-`eval_steps` at
  # `eval_eps` (eps when 0 and training adversarially) on the first `eval_examples` test images
  # is evaluated with each test evaluation: results.json `robust_accuracy`, TensorBoard
  # test/robust_accuracy.
  c.adversarial = ml_collections.ConfigDict({
      'method': 'none',        # none | pgd | trades
      'norm': 'linf',          # linf | l2
      'eps': 0.1,
      'steps': 7,
      'step_size': 0.0,        # 0 = 2.5 eps / steps
      'trades_beta': 6.0,
      'eval_eps': 0.0,         # > 0: robust evaluation also for standard training
      'eval_steps': 20,
      'eval_examples': 1000,
  })
  # Knowledge distillation (train/objectives/distill.py): train this config as the student of a trained
  # run; loss = weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * cross-entropy.
  c.distill = ml_collections.ConfigDict({
      'teacher': '',           # the teacher's workdir ('' = off)
      'temperature': 4.0,
      'weight': 0.9,           # of the soft-target term
  })
  # Transfer (train/transfer.py): start from a trained run's layers whose names and shapes
  # match (the head is re-initialized when the class count differs); layer lists are names,
  # patterns (Block_*), head, body or first:K.
  c.init_from = ''             # the source run's workdir ('' = train from scratch)
  c.init_from_step = -1        # its checkpoint step (-1 = the latest)
  c.finetune = ml_collections.ConfigDict({
      'reinit': '',            # layers re-initialized although the source has them
      'freeze': '',            # layers never updated (body = feature extraction)
      'freeze_batch_stats': False,  # frozen layers also keep their BN running statistics
      'lr_multipliers': '',    # LAYERS=FACTOR,..., e.g. 'head=10,body=0.1' (first match wins)
      'eval_source': False,    # evaluate the source task too (forgetting), with its own head
      'progressive': False,    # Rusu et al.: a new column with laterals from the frozen source
  })
  # Per-layer training diagnostics (train/diagnostics.py): dead units, activation mean and
  # std, gradient norm and update/weight ratio every `every_steps` steps, from the step's own
  # batch and gradient; TensorBoard, results.json `diagnostics`, W/diagnostics.png. The
  # trajectory is bitwise the same on or off; the cost is one extra step every_steps.
  c.diagnostics = ml_collections.ConfigDict({'enabled': False, 'every_steps': 100})
  # int8 quantization-aware training through qwix (fake-quantized weights and activations,
  # straight-through gradients); --mode=compress's int8 stage then converts the run.
  c.int8_qat = False
  # What the run learns (train/tasks.py) and the loss it minimizes (train/objectives/):
  # cross_entropy (with label_smoothing) | margin (capsule networks' margin loss).
  c.task = 'classification'
  c.objective = 'cross_entropy'
  c.label_smoothing = 0.1
  c.ema_decay = 0.0            # > 0: evaluate an exponential moving average of the weights
  c.eval_flip_tta = False      # evaluate on each test image and its mirror, averaged

  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 5
  c.num_train_steps = 0        # > 0 overrides num_epochs
  c.seed = 0
  c.dtype = 'float32'          # compute dtype: float32 | bfloat16 (parameters stay float32)
  # Convolution kernels: auto | onednn | xla. auto = oneDNN's on a CPU with AVX-512 when the
  # run can use them (one CPU device, `make kernels` built), XLA's otherwise: the faster of the
  # two on each CPU measured (docs/speed.md). The same math either way.
  c.conv_impl = 'auto'
  # Algorithm of the oneDNN convolutions: auto | direct. auto = Winograd on the f32 3x3 stride-1
  # layers where it measured faster (2-2.5x per layer on an AVX-512 CPU, docs/speed.md),
  # direct elsewhere; direct = direct everywhere. XLA's convolutions have no such choice.
  c.conv_algorithm = 'auto'

  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 0  # 0 = at the end of every epoch
  c.keep_checkpoints = 2
  return common.apply_arg(c, arg)
