// placeholder until the module lands; delete when adding real sources
namespace kvgate {}
