"""Physics-based subtomogram simulator: PDB → potential → crowded scene → tilt series with CTF,
MTF and noise at an exact SNR → weighted back-projection → 32³ subtomograms, masks and metadata.

Two imaging paths: ``tiltseries`` (reference, torch-fourier-slice + torch-ctf) and ``fast`` (the
same linear chain as one 3-D Fourier filter, measured from the reference); tests prove them equal.
"""

from cryonb.simulate.config import SimulationConfig, check_snr
from cryonb.simulate.dataset import (
    COSNET_UNSEEN_CLASSES,
    DatasetRecipe,
    SubtomoDataset,
    cosnet_recipe,
    cssl_recipe,
    ensure_dataset,
    generate_dataset,
    load_dataset,
    load_maps,
    simulate_sample,
)
from cryonb.simulate.density import MoleculeMap, molecule_map, peng_form_factor, potential_map
from cryonb.simulate.imaging import (
    Subtomogram,
    combine_at_snr,
    crop_center,
    fast_filters,
    irfftn_center_crop,
    project_tilt_series,
    reconstruct_tilt_series,
    simulate_fast,
    simulate_tiltseries,
    tilt_matrices,
)
from cryonb.simulate.optics import (
    ctf_curve,
    ctf_of_k,
    ctf_zeros_inv_a,
    detector_names,
    envelope_of_k,
    mtf_of_k,
    transfer_of_k,
)
from cryonb.simulate.scene import Placement, Scene, make_scene, random_rotation, rotate_map
from cryonb.simulate.tomogram import (
    SimulatedTomogram,
    place_particles,
    simulate_tomogram,
    tomogram_filters,
    write_coordinates_star,
)

__all__ = [
    "COSNET_UNSEEN_CLASSES", "DatasetRecipe", "MoleculeMap", "Placement", "Scene", "SimulatedTomogram", "SimulationConfig",
    "SubtomoDataset", "Subtomogram", "check_snr", "combine_at_snr", "cosnet_recipe", "crop_center",
    "cssl_recipe", "ctf_curve", "ctf_of_k", "ctf_zeros_inv_a", "detector_names", "ensure_dataset", "envelope_of_k",
    "fast_filters", "generate_dataset", "irfftn_center_crop", "load_dataset", "load_maps", "make_scene", "molecule_map",
    "mtf_of_k", "peng_form_factor", "place_particles", "potential_map", "project_tilt_series", "random_rotation",
    "reconstruct_tilt_series", "rotate_map", "simulate_fast", "simulate_sample", "simulate_tiltseries",
    "simulate_tomogram", "tilt_matrices", "tomogram_filters", "transfer_of_k", "write_coordinates_star",
]
